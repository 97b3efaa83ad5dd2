"""``python -m CPCSAMLib ...`` = ``cpcsam ...`` (used by the Slicer module with PythonSlicer)."""
import sys

from .cli import main

sys.exit(main())
