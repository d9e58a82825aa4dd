"""python -m starter: the command line for SecFlow assessments."""
