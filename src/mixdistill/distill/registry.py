from mixdistill.registry import Registry

DISTILLERS = Registry("method")
