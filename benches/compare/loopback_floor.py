# The kernel's floor under a WebSocket server on loopback: system CPU time of
# one small TCP send (and of one recv), the way the servers of the comparison
# pay them. N connections on 127.0.0.1, 60-byte messages round-robin with
# TCP_NODELAY from one process, a second process draining them with epoll.
# A loopback send also runs the receiver's TCP input (softirq) on the sender's
# CPU time, so it costs more than a send to a NIC would.
#
#   python3 benches/compare/loopback_floor.py [N=1000] [COUNT=200000]
#
# Bounded: COUNT sends, and the reader gives up after 60 s.
import os, socket, sys, time, resource, select
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
COUNT = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
MSG = b'x' * 60
ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(4096); port = ls.getsockname()[1]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    # reader: connects N sockets, drains them
    socks = [socket.create_connection(('127.0.0.1', port)) for _ in range(N)]
    ep = select.epoll()
    for s in socks:
        s.setblocking(False); ep.register(s.fileno(), select.EPOLLIN)
    fd = {s.fileno(): s for s in socks}
    os.write(w, b'r')
    got = 0; recvs = 0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    end = time.time() + 60
    while got < COUNT * len(MSG) and time.time() < end:
        for f, _ in ep.poll(1):
            try:
                d = fd[f].recv(65536); got += len(d); recvs += 1
            except BlockingIOError:
                pass
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f'reader: {recvs} recvs, sys {1e6*(r1.ru_stime-r0.ru_stime)/max(recvs,1):.2f} us/recv, user {1e6*(r1.ru_utime-r0.ru_utime)/max(recvs,1):.2f} us/recv, {got/len(MSG)/max(recvs,1):.2f} msgs/recv', flush=True)
    os._exit(0)
conns = []
for _ in range(N):
    c, _ = ls.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); conns.append(c)
os.read(r, 1)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.time()
for i in range(COUNT):
    conns[i % N].send(MSG)
    if i % 5000 == 4999: time.sleep(0.001)  # let the reader keep up
r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.time()
print(f'sender: {COUNT} sends, sys {1e6*(r1.ru_stime-r0.ru_stime)/COUNT:.2f} us/send, user {1e6*(r1.ru_utime-r0.ru_utime)/COUNT:.2f} us/send, wall {t1-t0:.1f}s', flush=True)
os.waitpid(pid, 0)
