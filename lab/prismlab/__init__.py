"""Prism's local lab: EC2 spot nodes on one machine.

Each node is a container running sshd and its own dockerd on the docker
network 172.31.250.0/24; moto (on 5053) plays the EC2 API behind the lab's
EBS stand-in on 127.0.0.1:5055, and knows every node as a spot instance
tagged prism:fleet=lab. A registry on the lab network serves the test app
and a PostgreSQL image to the nodes. Everything the lab makes carries
the docker label prism-lab=1, so `down` removes exactly that.

Run as root on Debian 12. State lives in .lab/ at the repository root (or
$PRISM_LAB_DIR): lab.json, env, fleet.toml, id_ed25519, known_hosts,
bare_known_hosts.

lab/lab runs cli.main(). The modules, each importing only common and those
listed before it:

  common    names and addresses, Fail and step, run/docker, say/warn,
            HTTP without proxies, the state in .lab/ and its lock
  install   packages, moto and dockerd (`install`, and the start of `up`)
  images    the base rootfs and the node, bare, registry, testapp,
            helper and postgres images, rebuilt when the hash of their
            inputs changes
  network   the docker network prism-lab
  registry  the plain registry and the one with auth (HTTPS, basic auth)
  nodes     node containers, the ssh key and host keys, the stand-in
            instance metadata service, the bare node's spec
  ec2       moto and the EBS front start/stop, the VPC, instances, tags,
            registration
  ebs       the EBS stand-in in front of moto (its own process): volumes
            as loop devices in the nodes, snapshots, terminations
  faults    preempt, notice, partition/heal, dockerd stop/start
  cli       the parser, up/add/bare/status/down/install, main()
"""
