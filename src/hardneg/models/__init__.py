"""hardneg.models"""
