import pathlib
import sys

# tests/ helpers (hf_fixtures) import as plain modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
