"""Sources: read or fetch molecules (ChEBI-20, PubChem, local TSV) into raw tables."""
