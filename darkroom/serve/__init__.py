"""The online endpoint: a Ray Serve application around the platform's ImageGenerator."""
