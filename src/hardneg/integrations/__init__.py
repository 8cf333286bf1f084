"""hardneg.integrations"""
