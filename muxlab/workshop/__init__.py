"""The workshop format: what an exercise.yml may say and how a check is judged (exercise;
the runner is muxlab/cli/workshop.py)."""
