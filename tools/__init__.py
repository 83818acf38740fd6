"""Fitting tools for the data the package ships (not installed with it): run from a clone of the repo."""
