"""Pure Sound application layer: the ``puresound`` command line."""
