"""The RADIUS dictionary pushauth ships (pushauth/radius/dictionary, pyrad's format): the attributes the
front and the upstream check read and write."""

from __future__ import annotations

import functools
import importlib.resources

import pyrad.dictionary


@functools.cache
def load_dictionary() -> pyrad.dictionary.Dictionary:
    """Parsed once per process; pyrad only reads it."""
    resource = importlib.resources.files("pushauth.radius").joinpath("dictionary")
    with importlib.resources.as_file(resource) as path:
        return pyrad.dictionary.Dictionary(str(path))
