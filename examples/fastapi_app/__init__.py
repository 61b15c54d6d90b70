"""The seed's FastAPI example on the real castor API (see README.md)."""
