"""The assessment workflow package: the process (`workflow.py`), its decisions (`policy.py`),
its fan-out over targets (`targets.py`), incidents and dead letters (`desk.py`), the user
API (`api.py`) and the activities it calls (`calls.py`)."""
