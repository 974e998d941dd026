"""The kernel side: the runtime that runs inside Kaggle, the wheel/code-dataset builder, and run-local."""
