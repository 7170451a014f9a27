-- Runs at every server start: the host's tests and sysbench log in as
-- dmig/dmig over TCP. root keeps unix_socket login (the guest agent).
CREATE USER IF NOT EXISTS 'dmig'@'%' IDENTIFIED BY 'dmig';
GRANT ALL PRIVILEGES ON *.* TO 'dmig'@'%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS sbtest;
CREATE DATABASE IF NOT EXISTS pool;
