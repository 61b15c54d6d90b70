"""castor's integrations with other libraries, each behind its own extra."""
