"""Target runtimes: their QDQ rules as data (``profile``) and conformance checks."""
