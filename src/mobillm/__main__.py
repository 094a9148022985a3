from mobillm.cli import app

app()
