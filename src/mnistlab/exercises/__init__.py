"""The lab's exercises: `mnistlab inspect` (model anatomy), learning-curve analysis, the lab (`mnistlab lab`)
and its report."""
