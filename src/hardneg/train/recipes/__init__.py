"""Recipes: a data source and its model, for the training engine (``hardneg.train.loop``)."""
