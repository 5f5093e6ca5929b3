from pointseg.viz.show import main

main()
