"""kops: make a Kaggle team's work traceable from the first training run to the leaderboard."""

__version__ = "0.1.0"
