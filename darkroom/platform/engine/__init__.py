"""Generation: request rows in (`rows`), prepared by the family's rules (`prepare`), run by the
`ImageGenerator` (`generator`), image rows out (`outputs`)."""
