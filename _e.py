import numpy as np, time, arraynorm as an, sys
from analysis._hessian import *
from arraynorm.nn.demo import spirals
lr=float(sys.argv[1]); steps=int(sys.argv[2]); act=sys.argv[3]; depth=int(sys.argv[4]); width=int(sys.argv[5])
x,y = spirals(256, 1000); t=np.eye(2)[y]
for norm in ["none","batch","layer","weight_norm"]:
    t0=time.perf_counter()
    m = an.nn.deep_stack(depth, width, in_features=2, out_features=2, norm=norm, activation=act, rng=0)
    f = ModelLoss(m, an.nn.MSELoss(), x, t)
    th=f.theta0.copy(); v0=None; out=[]
    for s in range(steps+1):
        L,g=f.value_and_grad(th)
        if s% (steps//10)==0:
            H=hessian_operator(f, th)
            vals,vecs=top_eigenvalues(H,1,v0=v0,tol=1e-4); v0=vecs[:,0]
            out.append((s, round(L,4), round(vals[0],2), H.products))
        th=th-lr*g
    print(norm, f"2/lr={2/lr:.1f}", out, f"{time.perf_counter()-t0:.1f}s", f.evaluations)
