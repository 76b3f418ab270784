"""Shared inference logic behind the scripts in ``scripts/``: flags, model loading, seeding,
precision, image I/O and the generation loop. Scripts only pick a task and its defaults."""
