"""Looking inside runs: ls (inventory) and show (one tensor)."""
