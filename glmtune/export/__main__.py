"""`python -m glmtune.export`: the export command, as `glmtune export`."""

from ..core import cli
from ..core.config import ExportConfig
from .job import __doc__ as doc, main

if __name__ == "__main__":
    config, options = cli.parse_args(ExportConfig, doc.splitlines()[0], epilog=doc)
    cli.run(main, config, debug=options.debug)
