"""Stage 0, beneath every stage: convlint's version, the one constant every report names.

The package re-exports it (``convlint.__version__``); modules import it from here, since the
package's ``__init__`` looks up the API (and with it the whole house) on first use.
"""

__version__ = "0.2.0"
