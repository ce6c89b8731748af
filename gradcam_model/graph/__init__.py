"""The graph builder: the wrapper, the capture of the backward as forward operators, the methods, the layer probe."""
