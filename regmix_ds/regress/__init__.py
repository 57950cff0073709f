"""Regression from mixtures to losses: result tables, fitting, exact top-k scoring, simulation
(best.json), plots. Pure arithmetic on tables: imports `core` only."""
