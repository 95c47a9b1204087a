"""Coverage-guided fuzzing (atheris) of the parsers that read untrusted bytes; see
targets.py for what each target drives and __main__.py for how to run one."""
