"""hardneg.train"""
