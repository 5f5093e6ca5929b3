from pointseg.predict.run import main

main()
