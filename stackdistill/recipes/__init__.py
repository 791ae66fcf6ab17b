"""Other papers' distillation recipes as pieces the one train step composes.

Each module cites the files and lines of the project it follows. Students' architecture
options live in `models/`; a recipe here is its loss, its masking and its target choice.
"""
