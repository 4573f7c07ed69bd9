"""Spark pandas UDFs of promptscore (the reward-model scorer lives here)."""
