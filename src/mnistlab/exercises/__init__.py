"""The lab's exercises: model anatomy, learning-curve analysis, the lab (`mnistlab lab`) and its report."""
