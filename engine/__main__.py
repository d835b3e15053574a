import sys

from llm_moments.engine.cli import main

sys.exit(main())
