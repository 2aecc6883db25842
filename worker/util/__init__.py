"""Small pure helpers shared across areas; they import nothing of ours, so any area may use them."""
