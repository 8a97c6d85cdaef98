"""The fault suite (pytest -m faults): faulty and hostile peers against real servers and nodes."""
