"""placeholder: written next"""
