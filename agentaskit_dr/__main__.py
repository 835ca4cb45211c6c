import sys

from agentaskit_dr.cli import main

sys.exit(main())
