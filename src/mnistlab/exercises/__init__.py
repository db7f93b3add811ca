"""The lab's exercises: model anatomy, learning-curve analysis, the lab runner and its report."""
