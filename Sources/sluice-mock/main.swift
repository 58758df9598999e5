print("sluice-mock")
