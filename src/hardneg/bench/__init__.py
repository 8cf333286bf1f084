"""hardneg.bench"""
