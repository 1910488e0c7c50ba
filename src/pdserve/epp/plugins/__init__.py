"""Built-in plugins; importing this package registers them."""

from pdserve.epp.plugins import filters, handlers, pickers, prefix, scorers  # noqa: F401
