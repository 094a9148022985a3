"""Recipes above the library: what `mobillm train` and `mobillm device` run end to end."""
