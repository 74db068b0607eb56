"""Examples that ship with dumpcmp: the tiny MoE engine that ``dumpcmp demo`` runs."""
