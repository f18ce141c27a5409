"""The runtime shared by batch jobs and the online endpoint: models, samplers, the generator."""
