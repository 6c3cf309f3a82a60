import sys

from neutts_assets.cli import main

sys.exit(main())
