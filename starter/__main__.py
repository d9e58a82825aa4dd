from secflow.exit import exit_now
from starter.cli import main

exit_now(main())
