"""The seeds' claims, reproduced: one module per claim (see common.py for what each provides).

``python -m scripts.reproductions`` runs them all; ``python -m scripts.reproductions.<name>`` runs one.
"""
