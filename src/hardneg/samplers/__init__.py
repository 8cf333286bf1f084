"""hardneg.samplers"""
